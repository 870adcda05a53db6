"""Write a synthetic COCO retrieval corpus in the official file format (see `vinvl make-synthetic --help`)."""
import vinvl  # noqa: F401  (CPU runtime defaults before paddle)
from vinvl.data.synthetic import main

if __name__ == "__main__":
    main()
