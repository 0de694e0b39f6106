"""Helpers the tests import (`from tests.helpers.<module> import ...`); pytest fixtures live in conftest.py.

config.py          REPO, CONF, compose_config, tiny_train_overrides: our real Hydra configs, composed for a test
batch.py           global_batch: a fixed random batch for bmca-tiny, the same in every process
numeric.py         assert_close_scaled, max_abs: float comparisons scaled to the values (STYLE.md)
shards.py          small tar shards with good and bad samples, and `deadline` for streams that could spin
torchrun.py        torchrun: start `torch.distributed.run` with two gloo ranks on this machine
dist_worker.py     the script torchrun runs for tests/integration/test_distributed.py
eval_fixtures.py   a tiny random-init CLIP, local eval task data and task YAML bodies
eval_hub_repos.py  stand-ins for the hub datasets the eval loaders read, in their real layouts
hub/               FakeHub: a local huggingface.co over HTTP with fault injection
slurm_cluster.py   a one-node Slurm cluster for tests/cluster/
"""
