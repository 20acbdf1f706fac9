"""Planning a grid: a suite file, validated -> the cells it expands to, each with a stable id."""
