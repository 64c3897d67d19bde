"""A deterministic simulated fleet of electricity and taxi meters with known ground truth."""

from monitor.simulate.fleet import Fleet
from monitor.simulate.pace import run_paced
from monitor.simulate.registry import write_registry_csv
from monitor.simulate.spec import FleetSpec, MeterTruth, SimMessage

__all__ = ["Fleet", "FleetSpec", "MeterTruth", "SimMessage", "run_paced", "write_registry_csv"]
