"""The web console and its API: the read models, the live feed, replays and halts."""
