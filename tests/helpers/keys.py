"""The one API key every test gives its plugins and sandboxes.

Distinctive, so that the key scan (tests/helpers/key_scan.py) can tell a leak from
anything else a run prints. A test that needs a second account's key defines that key
itself and hands it to `key_scan.scan_for`.
"""

API_KEY = "gtm_live_KEYSCAN-5c0f9e17a2b84d63"
