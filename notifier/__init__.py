"""The notifier: tells people what needs them (dead letters, outages, halts) via Apprise."""
