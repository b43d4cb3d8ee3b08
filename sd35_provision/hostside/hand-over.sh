# Give the service user what it does not own yet under a root, readable; leave the rest untouched
# (a chown changes ctime, which would make the next model check hash every file again).
find @root@ \( ! -user @user@ -o ! -group @user@ \) -exec chown -h @owner@ {} + &&
    find @root@ \( -type f ! -perm -u=r -exec chmod u+r {} + \) -o \( -type d ! -perm -u=rx -exec chmod u+rx {} + \)
