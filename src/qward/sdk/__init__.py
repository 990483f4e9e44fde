"""The client SDK: what applications import to use qward. It holds no private key.

- ``client``: the verbs ``seal_model``, ``seal_input``, ``verify`` and ``Client`` (run, replay)
  over a local core.
- ``core_client``: sync and async clients of the core's Unix socket.
- ``core_process``: start a local core (``python -m qward.protected``) and reach it.
- ``http_client``: the same verbs against a remote ``qward serve``.
- ``log_client``: an auditor's client of the C2SP tiles log.
"""
