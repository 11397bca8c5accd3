"""Talking to the server: the client, retries, bucket checks, lifecycle, listing and the PUT senders."""
