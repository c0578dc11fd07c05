"""Driving policies trained by unrolling the forward model under uncertainty costs."""
