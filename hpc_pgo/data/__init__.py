"""Cohorts: import, WebDataset shard write/read/verify, splits, the demo simulator, fold loaders."""
