"""State-evaluation rules: the rules file schema and, later, the rule logic."""
