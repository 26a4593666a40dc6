"""Attribution methods as objects, found by name (``registry.METHODS``): K-FAC influence, TRAK, D-TRAK,
pixel and CLIP cosine. Each owns its stored settings (the refuse-on-change check), its scoring pass and
the loading of its scores; see ``docs/design_methods.md`` for the steps still to come."""
