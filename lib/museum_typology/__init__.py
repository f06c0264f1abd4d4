"""museum-typology: sort Goskatalog museum items into their 15 typologies with Spark jobs."""

__version__ = "0.1.0"
