"""The engine code made fake-friendly computes what torch computes from tensor values."""

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor import empty as dtensor_empty
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.testing._internal.distributed.fake_pg import FakeStore

from motif.train.engines.fsdp import local_rows


@pytest.mark.parametrize("rows", [1, 3, 10, 16, 17])
def test_local_rows_match_dtensor_offsets(rows):
    for rank in range(4):
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=4)
        try:
            for shape, placements in (((4,), (Shard(0),)), ((2, 2), (Replicate(), Shard(0)))):
                mesh = init_device_mesh("cpu", shape)
                p = dtensor_empty(rows, 5, device_mesh=mesh, placements=placements)
                local, offset = compute_local_shape_and_global_offset(p.shape, mesh, p.placements)
                assert local_rows(p) == (offset[0], offset[0] + local[0]), (rows, rank, shape)
                assert local_rows(p)[1] - local_rows(p)[0] == p.to_local().shape[0]
        finally:
            dist.destroy_process_group()
    assert torch.distributed.is_initialized() is False
