"""Real ORB-SLAM3 (pyorbslam3) in the loop: vocabulary, settings, bridge, comparison."""
