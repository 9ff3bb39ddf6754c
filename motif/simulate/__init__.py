"""`motif simulate`: one optimizer step of a stage, run by the engine's own code on fake tensors.

The stage is built and stepped at its real shape and world size on CPU `FakeTensorMode` tensors
(shapes, dtypes and storage sizes, no data) in a fake process group of W ranks, seen from rank 0.
Memory comes from FSDP2's own tracker (`tracker`), time from the operators and collectives the
step issued (`counter`, `timing`, `devices`; on a CPU, the step's calls replayed: `replay`). See
docs/training.md "Simulating a stage".
"""
