"""Device kernels behind the region-convolution operator."""
