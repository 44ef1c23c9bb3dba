"""Rules: which graph sites get which adapter. Rule/Pattern/RuleSet, rule files, built-in rule lookup,
option schemas."""
