"""One module per workflow operation; the context calls into them."""
