"""Generation: prefill and decode graphs with a KV cache, and the decoding loop over them."""
