"""Feedback for autonomous-experiment agents: a compact per-frame message and a derived run."""

from spt_stream.feedback.message import DescriptorEstimate, FrameFeedback, frame_feedback_schema

__all__ = ["DescriptorEstimate", "FrameFeedback", "frame_feedback_schema"]
