"""Getting transcripts into the library: sources, caption parsing, chunking, the job."""

from backtalk.ingest.chunking import Chunk as Chunk
from backtalk.ingest.chunking import chunk_segments as chunk_segments
from backtalk.ingest.job import IngestOutcome as IngestOutcome
from backtalk.ingest.job import IngestReport as IngestReport
from backtalk.ingest.job import ingest_sources as ingest_sources
from backtalk.ingest.job import ingest_with_settings as ingest_with_settings
from backtalk.ingest.segments import Segment as Segment
from backtalk.ingest.sources import CaptionFileSource as CaptionFileSource
from backtalk.ingest.sources import Source as Source
from backtalk.ingest.sources import YouTubeSource as YouTubeSource
from backtalk.ingest.sources import parse_source as parse_source
from backtalk.ingest.sources import parse_video_id as parse_video_id
from backtalk.ingest.youtube import YouTubeProxy as YouTubeProxy

__all__ = [
    "CaptionFileSource",
    "Chunk",
    "IngestOutcome",
    "IngestReport",
    "Segment",
    "Source",
    "YouTubeProxy",
    "YouTubeSource",
    "chunk_segments",
    "ingest_sources",
    "ingest_with_settings",
    "parse_source",
    "parse_video_id",
]
