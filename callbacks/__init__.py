"""Lightning callbacks of lit-attr; refer to them in YAML by full class path (``callbacks.samples.SampleGridCallback``)."""
