"""The national emergency-broadcast platform interface (GD/J 083-2018, GY/T 384-2023)."""
