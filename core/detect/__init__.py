"""Face detection: MTCNN with facenet-pytorch's weights (boxes, scores and five landmarks per face), and
dlib's 5-point landmark predictor (shape_predictor.py), the second landmark model the cloak aligns with."""

from .mtcnn import Detections, FaceDetector
from .nms import nms

__all__ = ["Detections", "FaceDetector", "nms"]
