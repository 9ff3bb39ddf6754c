"""`motif-torchrun`: torchrun for a pod that Kubernetes may stop at any time (preemption, drain, delete).

Kubernetes sends SIGTERM to the container's first process and SIGKILLs it
`terminationGracePeriodSeconds` later. Plain torchrun as that process relays SIGTERM to its
workers but kills them 30 s later (its default shutdown timeout), whatever they are writing, and
exits 1 with a `SignalException` traceback, which a PyTorchJob with `restartPolicy: ExitCode`
treats as a permanent failure.

This is torchrun itself (same arguments, run in this process), with two differences:
- the shutdown timeout is the pod's grace period less a margin (`MOTIF_GRACE_SECONDS`, set by the
  chart from `terminationGracePeriodSeconds`), so the workers have the time to finish their step
  and write the checkpoint they agree on (`motif train` does that on SIGTERM);
- a stop by signal ends with one line and exit status 143 (128 + SIGTERM), which `OnFailure`
  restarts in place and `ExitCode` retries by recreating the pod; the next start resumes with
  `--resume auto`.
"""

from __future__ import annotations

import os
import signal
import sys

EXIT_PREEMPTED = 128 + signal.SIGTERM  # 143: "stopped from outside; retry", for every restart policy
MARGIN_SECONDS = 10  # the agent's own exit and the container runtime's teardown after the workers


def shutdown_timeout(environ: dict[str, str]) -> int | None:
    """Seconds torchrun waits for its workers after a signal: the grace period less the margin."""
    value = environ.get("MOTIF_GRACE_SECONDS")
    if not value:
        return None
    try:
        grace = int(value)
    except ValueError:
        raise SystemExit(f"motif-torchrun: MOTIF_GRACE_SECONDS: expected whole seconds, got {value!r}") from None
    return max(grace - MARGIN_SECONDS, 1)


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    timeout = shutdown_timeout(dict(os.environ))
    if timeout is not None:
        os.environ["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = str(timeout)
    # torch.distributed.run's entry points carry no annotations.
    args = parse_args(sys.argv[1:] if argv is None else argv)  # type: ignore[no-untyped-call]
    if timeout is not None and getattr(args, "shutdown_timeout", None) is None:
        args.shutdown_timeout = timeout
    try:
        run(args)  # type: ignore[no-untyped-call]
    except SignalException as e:
        name = signal.Signals(e.sigval).name
        print(
            f"motif-torchrun: stopped by {name}: the workers were given {timeout or 30}s to checkpoint and exit; "
            f"exiting with status {EXIT_PREEMPTED} so the job is retried and resumes from that checkpoint",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_PREEMPTED
    except ChildFailedError as e:
        # The workers' own messages (one line each) are already in the log; torchrun's report of
        # which rank failed with what status follows, without a traceback.
        print(f"motif-torchrun: {' '.join(str(e).split())[:2000]}", file=sys.stderr, flush=True)
        codes = [f.exitcode for f in e.failures.values()]
        return EXIT_PREEMPTED if EXIT_PREEMPTED in codes else (codes[0] if codes and 0 < codes[0] < 256 else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
