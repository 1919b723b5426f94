"""The pure core: no trio, no I/O, typed throughout.

- ``contract``: the contract both ways: its messages, frames in (decode), replies out, request to job.
- ``texts``: every text a client can read. ``config``: the settings structs the command line derives from.
- ``engine``: the engine port and the job it runs. ``tasks``: the task registry and its state table.
- ``openai`` and ``voices``: the HTTP speech API's and the voice library's rules. ``fleet``: cluster
  mode's task records. ``segment``: the tone engine's text segmentation.
"""
