"""The contract, both directions: its messages (protocol), frames in (decode), replies out, request to job."""
