"""The model side: the LitServe worker hooks and the inference engine they call."""
