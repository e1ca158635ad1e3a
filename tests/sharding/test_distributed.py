"""Which cluster a process is part of decides whether `jax.distributed` starts: SLURM and TPU pods by their
variables, a Cloud TPU VM (which sets none) the way JAX itself finds it, a plain process not at all."""

import pytest
from jax._src import clusters

from tlv_jax.sharding import distributed

CLUSTER_VARS = ("SLURM_JOB_ID", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID")


@pytest.fixture
def plain(monkeypatch):
    for name in CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def cluster_type(name: str, present: bool, opt_in: bool = False) -> type:
    return type(name, (), {"is_env_present": classmethod(lambda cls: present), "opt_in_only_method": opt_in})


def test_a_plain_process_is_in_no_cluster(plain):
    assert distributed.detected_cluster() is None


def test_a_slurm_job_of_several_tasks_is_a_cluster_and_one_task_is_not(plain):
    plain.setenv("SLURM_JOB_ID", "7")
    plain.setenv("SLURM_NTASKS", "1")
    assert distributed.detected_cluster() is None
    plain.setenv("SLURM_NTASKS", "4")
    assert distributed.detected_cluster() == "slurm"


def test_a_cloud_tpu_vm_is_found_through_jaxs_own_detection(plain):
    plain.setattr(clusters.ClusterEnv, "_cluster_types", [cluster_type("GceTpuCluster", True)])
    assert distributed.detected_cluster() == "tpu"


@pytest.mark.parametrize("types", [[cluster_type("GceTpuCluster", False)],
                                   [cluster_type("GceTpuCluster", True, opt_in=True)],
                                   [cluster_type("K8sCluster", True)]])
def test_tpu_clusters_that_are_absent_opt_in_or_not_tpus_are_not(plain, types):
    plain.setattr(clusters.ClusterEnv, "_cluster_types", types)
    assert distributed.detected_cluster() is None
