"""mitmproxy addons: `mitmdump -s addons/enforce.py --set aup_policy=FILE`."""
