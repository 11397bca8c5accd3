"""The stages a changed file goes through: scan/watcher -> settle -> queue -> uploader -> recorder."""
