"""Electricity meters: registers to intervals, the energy-balance estimate, meter rules, lots and sampling."""
