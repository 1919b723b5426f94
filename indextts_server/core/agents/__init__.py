"""Voice agents on Cartesia's ``/tts/websocket`` protocol, pure: text as it is written, replies, audio.

- ``transcript``: a context's text pieces joined and committed sentence by sentence.
"""
