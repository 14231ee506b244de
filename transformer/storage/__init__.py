"""Storage: the S3 object store (through the `minio` client) and a local directory, as result sinks and
as key-index fragment stores. Never imports messaging, reading, joining or inference.
"""
