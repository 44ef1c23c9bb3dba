"""Runtime: GraphPeftModel, the nn.Module that runs adapter-rewritten graphs of a base model."""
