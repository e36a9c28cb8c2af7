"""The flwr-run launch: what it hands `flwr run`, read back by Flower's own parser."""

from flwr.cli.run.run import _parse_federation_config_overrides
from flwr.cli.typing import SuperLinkConnection
from omegaconf import OmegaConf

from fedunlearn.config import compose
from fedunlearn.runtime.flwr_simulation import federation_config


def parsed(overrides, gpus=0.0):
    cfg = compose(overrides)
    # A GPU share is refused by compose on this CPU-only machine; set it after.
    OmegaConf.set_readonly(cfg, False)
    cfg.runtime.client_gpus = gpus
    text = federation_config(cfg)
    connection = SuperLinkConnection(name="x", address="127.0.0.1:1", insecure=True)
    return _parse_federation_config_overrides([text], connection)


def test_virtual_clients_and_ray_resources_reach_flower():
    sim = parsed(["num_clients=1000", "runtime.client_cpus=2", "runtime.num_cpus=4"], 0.25)
    assert (sim.num_supernodes, sim.client_resources_num_cpus) == (1000, 2)
    assert sim.client_resources_num_gpus == 0.25 and sim.init_args_num_cpus == 4
    assert sim.init_args_logging_level == "ERROR" and sim.init_args_log_to_driver is False
    # Without runtime.num_cpus Ray takes every core: Flower is not told a number.
    assert not parsed([]).HasField("init_args_num_cpus")
