"""The Rewind trainer (installed as `rewind_trainer`): a TD-MPC2-style agent and its online loop."""
