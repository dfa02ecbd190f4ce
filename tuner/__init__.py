"""tuner: tune ONNX models with TVM MetaSchedule and share the best schedules in SQL."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tuner")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
