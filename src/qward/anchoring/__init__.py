"""Optional ledger anchoring of transparency-log checkpoints.

An anchor publishes a digest of a signed checkpoint note in a ledger the log operator does not
control, so that anyone can later show the checkpoint existed no later than the ledger's time.
Anchors add a timestamp; they do not replace witnesses, which remain qward's primary decentralised
check that a log shows everyone the same history (see docs/anchoring.md).

- ``base``: the one interface. The ``Anchor`` protocol (``anchor`` and ``verify``), the
  ``AnchorProof`` wire format, ``AnchoredTime``, ``anchor_digest`` and ``verify_anchor``, which
  picks the anchor by the proof's kind. No third-party dependency.
- ``ethereum``: ``EthereumAnchor``, a transaction whose calldata is a tag and the digest, via
  web3.py against any provider. Needs the ``anchoring`` extra.
- ``opentimestamps``: ``OpenTimestampsAnchor``, a detached OpenTimestamps proof submitted to
  calendar servers and, once upgraded, attested by Bitcoin. Needs the ``anchoring`` extra.

Importing this package or ``base`` never imports web3 or opentimestamps; the plug-in modules do,
and say which extra to install when it is missing.
"""

from __future__ import annotations
