"""Remote error estimation of electricity meters from the energy balance of a district."""
