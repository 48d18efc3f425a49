"""One module per input layout. Each exposes a reader ``read_<layout>(files, feature_set, options) ->
SourceRead`` listed in ``affect_core.data.readers.LAYOUT_READERS``."""
