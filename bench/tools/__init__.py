"""Tools built on the pipeline: weightless estimates and the regression gate."""
