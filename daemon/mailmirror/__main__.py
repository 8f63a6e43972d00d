from mailmirror.cli.main import main

main()
