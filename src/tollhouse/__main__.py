from tollhouse.cli import main

main()
