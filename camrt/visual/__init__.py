"""Drawing and video: the only package that imports cv2 (lazily, per module)."""
