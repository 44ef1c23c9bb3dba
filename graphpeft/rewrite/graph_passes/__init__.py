"""Graph passes run on exported or rewritten graphs: quantized linears, fused head loss, checkpointing, native GQA."""
