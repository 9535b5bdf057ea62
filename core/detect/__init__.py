"""Face detection: MTCNN with facenet-pytorch's weights (boxes, scores and five landmarks per face)."""

from .mtcnn import Detections, FaceDetector
from .nms import nms

__all__ = ["Detections", "FaceDetector", "nms"]
