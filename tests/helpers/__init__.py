"""Helpers the tests import (`from tests.helpers.<module> import ...`); pytest fixtures live in conftest.py.

config.py          REPO, CONF, compose_config, tiny_train_overrides: our real Hydra configs, composed for a test
batch.py           global_batch: a fixed random batch for bmca-tiny, the same in every process
numeric.py         assert_close_scaled, max_abs: float comparisons scaled to the values (STYLE.md)
shards.py          small tar shards with good and bad samples, and `deadline` for streams that could spin
torchrun.py        torchrun: start `torch.distributed.run` with two gloo ranks on this machine
dist_worker.py     the script torchrun runs for tests/integration/test_distributed.py
val_worker.py      the script torchrun runs for tests/integration/test_validation_distributed.py
eval_fixtures.py   a tiny random-init CLIP, local eval task data and task YAML bodies
eval_hub_repos.py  stand-ins for the hub datasets the eval loaders read, in their real layouts
eval_loaders.py    task YAMLs from a source block, to_tensor, centre colours: what the eval loader tests share
biomedica_hub.py   the stand-in BIOMEDICA hub repo of the streaming and secrets tests, and its data config
fake_hub_repo.py   the repo the fake hub's own tests serve (tests/integration/fake_hub/)
readme.py          the README's shell commands as tests/integration/test_readme_commands.py runs them
hub/               FakeHub: a local huggingface.co over HTTP with fault injection
slurm_cluster.py   a one-node Slurm cluster for tests/cluster/
"""
