"""Tracing: a model and a call signature become an exported GraphModule (block reuse, export ranges, model facts)."""
