"""Models: where they come from (URIs), how they load, what their signatures say."""
