"""Evaluation: metrics, loop and relocalization metrics, homography pairs from real photos, plots and reports."""
