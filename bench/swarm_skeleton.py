"""The machine's floor for a streamed reconstruction round (see ``rmio.skeleton`` for what it runs).

python bench/swarm_skeleton.py --agents 6 --steps 2000
python bench/swarm_skeleton.py --agents 6 --steps 2000 --transport udp
"""

from __future__ import annotations

from rmio.skeleton import main

if __name__ == "__main__":
    main()
